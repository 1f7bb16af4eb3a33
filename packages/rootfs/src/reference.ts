import { RootfsError } from "./errors.ts";
import { digestSchema } from "./oci-schemas.ts";

/** An image reference, normalized the way Docker does it. */
export interface ImageReference {
  /** The registry as users name it: `docker.io`, `registry.example:5000`, `127.0.0.1:5000`. */
  registry: string;
  /** The host the distribution API is served from (`registry-1.docker.io` for docker.io). */
  apiHost: string;
  /** `library/alpine`, `team/app`. */
  repository: string;
  tag?: string;
  digest?: string;
  /** The fully qualified form: `docker.io/library/alpine:latest`, `host:5000/team/app@sha256:…`. */
  canonical: string;
}

export const DOCKER_HUB = "docker.io";
const DOCKER_HUB_API = "registry-1.docker.io";

// From distribution/reference: path components, tags and domains.
const PATH_COMPONENT = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;
const TAG = /^\w[\w.-]{0,127}$/;
const DOMAIN =
  /^(?:(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?$/;

function invalid(input: string, why: string): RootfsError {
  return new RootfsError(
    "REFERENCE_INVALID",
    `invalid image reference ${JSON.stringify(input)}: ${why}. Expected [registry[:port]/]repository[:tag][@sha256:digest], e.g. registry.example:5000/team/app:1.2 or alpine`,
    { details: { reference: input, why } },
  );
}

/**
 * Parse a Docker-style image reference: a first component with a `.` or `:` (or `localhost`) is the
 * registry, otherwise docker.io; single-name Docker Hub repositories get `library/`; no tag and no
 * digest means `latest`.
 */
export function parseImageReference(input: string): ImageReference {
  const text = input.trim();
  if (text === "") throw invalid(input, "it is empty");
  let rest = text;
  let digest: string | undefined;
  const at = rest.indexOf("@");
  if (at !== -1) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
    if (!digestSchema.safeParse(digest).success)
      throw invalid(input, `digest ${JSON.stringify(digest)} is not sha256:<64 hex> or sha512:<128 hex>`);
  }
  let tag: string | undefined;
  const lastSlash = rest.lastIndexOf("/");
  const colon = rest.lastIndexOf(":");
  if (colon > lastSlash) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (!TAG.test(tag))
      throw invalid(input, `tag ${JSON.stringify(tag)} is not valid (letters, digits, _ . -; at most 128)`);
  }
  let registry = DOCKER_HUB;
  let repository = rest;
  const firstSlash = rest.indexOf("/");
  if (firstSlash !== -1) {
    const first = rest.slice(0, firstSlash);
    if (
      first.includes(".") ||
      first.includes(":") ||
      first === "localhost" ||
      first !== first.toLowerCase()
    ) {
      registry = first;
      repository = rest.slice(firstSlash + 1);
    }
  }
  if (!DOMAIN.test(registry))
    throw invalid(input, `registry ${JSON.stringify(registry)} is not a valid host[:port]`);
  if (registry === "index.docker.io") registry = DOCKER_HUB;
  if (registry === DOCKER_HUB && !repository.includes("/")) repository = `library/${repository}`;
  if (repository === "" || repository.length > 255)
    throw invalid(input, "the repository name is empty or too long");
  for (const component of repository.split("/")) {
    if (!PATH_COMPONENT.test(component)) {
      throw invalid(
        input,
        `repository component ${JSON.stringify(component)} must be lowercase letters and digits separated by . _ __ or -`,
      );
    }
  }
  if (tag === undefined && digest === undefined) tag = "latest";
  const canonical = `${registry}/${repository}${tag !== undefined ? `:${tag}` : ""}${digest !== undefined ? `@${digest}` : ""}`;
  return {
    registry,
    apiHost: registry === DOCKER_HUB ? DOCKER_HUB_API : registry,
    repository,
    ...(tag !== undefined ? { tag } : {}),
    ...(digest !== undefined ? { digest } : {}),
    canonical,
  };
}

/** Loopback registries are spoken to over plain HTTP by default, as Docker does for localhost. */
export function isLoopbackRegistry(registry: string): boolean {
  const host = registry.startsWith("[")
    ? registry.slice(0, registry.indexOf("]") + 1)
    : (registry.split(":")[0] ?? registry);
  return host === "localhost" || host === "[::1]" || /^127\.\d+\.\d+\.\d+$/.test(host);
}

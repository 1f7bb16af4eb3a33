import { SbxError, type SbxErrorOptions } from "@sbx/arch";

/** The stable codes of StoreError. */
export type StoreErrorCode =
  /** SBX_STORE_URL or another store option is malformed or missing; `variable` names it. */
  | "CONFIG_INVALID"
  /** The store refused the credentials; `variable` names the one to fix. */
  | "CREDENTIALS_REJECTED"
  /** The store's bucket or directory does not exist. */
  | "BUCKET_NOT_FOUND"
  | "NOT_FOUND"
  /** A key with a character or segment the store layout does not allow. */
  | "KEY_INVALID"
  /** A byte range that is negative, not an integer, or past the object's end. */
  | "RANGE_INVALID"
  /** The store did not answer (refused, reset, timed out) within the request's bounded time. */
  | "STORE_UNREACHABLE"
  /** The store answered with an error that none of the codes above describes. */
  | "STORE_FAILED"
  /** A chunk's bytes do not match the sha256 or length its chunk table records. */
  | "CHUNK_CORRUPT"
  /** A build in the store (build.json, a chunk table, a whole file) is missing a part or fails its checksum. */
  | "BUILD_INVALID"
  /** A local build directory or its files are not what the upload was told. */
  | "LOCAL_BUILD_INVALID"
  /** downloadBuild's target directory exists already: this host has the build. */
  | "LOCAL_BUILD_EXISTS"
  /** A memory range the store holds no chunk for: the header gives those pages to another build. */
  | "RANGE_NOT_STORED"
  | "ABORTED"
  | "CLOSED";

/** The one error class of @sbx/store. `code` is stable; `key` and `variable` are set where they apply. */
export class StoreError extends SbxError<StoreErrorCode> {
  static override readonly errorScope = "store";
  override readonly name = "StoreError";
  readonly key: string | undefined;
  readonly variable: string | undefined;

  constructor(
    code: StoreErrorCode,
    message: string,
    options: SbxErrorOptions & { key?: string; variable?: string } = {},
  ) {
    super(code, message, options);
    this.key = options.key;
    this.variable = options.variable;
  }
}

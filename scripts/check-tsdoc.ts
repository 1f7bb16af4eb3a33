// Every public export of every published package carries a TSDoc comment: the one line a user reads in
// their editor. Walks each package's entry points (package.json "exports", the @sbx/source condition)
// with the TypeScript compiler and lists each exported declaration without a /** */ comment.
// Usage: node scripts/check-tsdoc.ts [package ...]; exits 1 when anything is missing.
import { readdirSync, readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import ts from "typescript";

const root = resolve(import.meta.dirname, "..");

interface PackageJson {
  name: string;
  private?: boolean;
  exports?: Record<string, string | { "@sbx/source"?: string }>;
}

function entryPoints(dir: string): string[] {
  const pkg = JSON.parse(readFileSync(join(dir, "package.json"), "utf8")) as PackageJson;
  if (pkg.private) return [];
  return Object.values(pkg.exports ?? {})
    .map((target) => (typeof target === "string" ? undefined : target["@sbx/source"]))
    .filter((path): path is string => path?.endsWith(".ts") === true)
    .map((path) => join(dir, path));
}

function hasDoc(declaration: ts.Declaration): boolean {
  // A variable's comment sits on its statement; a class member's or function's on itself.
  let node: ts.Node = declaration;
  if (ts.isVariableDeclaration(node)) node = node.parent.parent;
  return ts.getJSDocCommentsAndTags(node).length > 0 || /\/\*\*[\s\S]*?\*\/\s*$/.test(leadingText(node));
}

function leadingText(node: ts.Node): string {
  const text = node.getSourceFile().getFullText();
  return text.slice(node.getFullStart(), node.getStart());
}

const wanted = process.argv.slice(2);
const packages = readdirSync(join(root, "packages"))
  .filter((name) => wanted.length === 0 || wanted.includes(name))
  .map((name) => join(root, "packages", name));
const entries = packages.flatMap(entryPoints);
const program = ts.createProgram(entries, {
  allowImportingTsExtensions: true,
  noEmit: true,
  module: ts.ModuleKind.NodeNext,
  moduleResolution: ts.ModuleResolutionKind.NodeNext,
  target: ts.ScriptTarget.ES2023,
  customConditions: ["@sbx/source"],
});
const checker = program.getTypeChecker();
const missing: string[] = [];
for (const entry of entries) {
  const source = program.getSourceFile(entry);
  const module = source && checker.getSymbolAtLocation(source);
  if (!module) continue;
  for (const exported of checker.getExportsOfModule(module)) {
    const symbol = exported.flags & ts.SymbolFlags.Alias ? checker.getAliasedSymbol(exported) : exported;
    const declarations = symbol.declarations ?? [];
    // A namespace re-export (`export * as kernel`) is documented by its module's own header.
    if (declarations.some((d) => ts.isSourceFile(d))) continue;
    if (declarations.length > 0 && !declarations.some(hasDoc)) {
      const first = declarations[0] as ts.Declaration;
      const file = first.getSourceFile();
      const { line } = file.getLineAndCharacterOfPosition(first.getStart());
      missing.push(`${file.fileName.slice(root.length + 1)}:${line + 1} ${exported.name}`);
    }
  }
}
const unique = [...new Set(missing)].sort();
for (const line of unique) console.log(line);
console.log(`tsdoc: ${unique.length} public exports without a comment`);
process.exit(unique.length > 0 ? 1 : 0);

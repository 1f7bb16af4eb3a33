// The package's libc calls are @sbx/arch/native's: one ffi-rs binding for every sbx package (this one
// and @sbx/cpu-template). Re-exported under the names this package's modules import; the numbers the
// calls take are in linux.ts.
export {
  addressOf,
  type CallResult,
  libc,
  libcUnchecked,
  nativeView,
  resolveLibcSymbols,
} from "@sbx/arch/native";

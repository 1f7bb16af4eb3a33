export { isTempName, syncDirectory, tempNameOwner, tempPathFor, writeFileAtomic } from "@sbx/arch";

/** True when a process with this pid exists (signal 0 checks without sending). */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM";
  }
}

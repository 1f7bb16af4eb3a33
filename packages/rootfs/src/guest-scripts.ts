/**
 * The shell scripts injected into the guest. They run under busybox `sh` (ash) as PID 1 or from
 * it, before the image's own tools can be trusted, so they use only POSIX sh and busybox applets.
 *
 * Debian's busybox-static prefers its own applets over PATH, so every command with side effects
 * goes through `"$SBX_BB" <applet>`; tests point SBX_BB at a stub. SBX_ROOT prefixes every file the
 * scripts read or write (empty in the guest) and SBX_CMDLINE_FILE replaces /proc/cmdline.
 */

/** Printed on the serial console once init has set up the guest, just before the workload starts. */
export const READY_MARKER = "SBX_GUEST_READY";
/** Printed on the serial console by the provisioning runner as `SBX_PROVISION_EXIT status=<n>`. */
export const PROVISION_EXIT_MARKER = "SBX_PROVISION_EXIT";

/** Finds the provisioning exit marker in console output and returns the script's exit status. */
export function parseProvisionExit(consoleOutput: string): number | undefined {
  const match = new RegExp(`^${PROVISION_EXIT_MARKER} status=(\\d+)\\s*$`, "m").exec(consoleOutput);
  return match ? Number(match[1]) : undefined;
}

/** Quotes one word for POSIX sh. */
export function shellQuote(word: string): string {
  return `'${word.replaceAll("'", `'\\''`)}'`;
}

export interface GuestLibraryOptions {
  /** Seconds since the epoch when the image was built; the APT clock fallback compares against it. */
  buildEpochSeconds: number;
  /** Files the provisioning runner makes immutable with `chattr +i`. */
  immutableFiles: readonly string[];
}

export function guestLibraryScript(options: GuestLibraryOptions): string {
  for (const file of options.immutableFiles) {
    if (!/^\/[A-Za-z0-9._/-]+$/.test(file))
      throw new Error(`immutable file ${file} must be an absolute plain path`);
  }
  return `# sbx guest library, sourced by /.sbx/init, /.sbx/provision-runner and /.sbx/setup-network.
SBX_BB="\${SBX_BB:-/.sbx/bin/busybox}"
SBX_ROOT="\${SBX_ROOT:-}"
SBX_CMDLINE_FILE="\${SBX_CMDLINE_FILE:-/proc/cmdline}"
SBX_BUILD_EPOCH=${Math.floor(options.buildEpochSeconds)}
SBX_IMMUTABLE_FILES=${shellQuote(options.immutableFiles.join(" "))}
SBX_READY_MARKER=${READY_MARKER}
SBX_PROVISION_EXIT_MARKER=${PROVISION_EXIT_MARKER}
SBX_IMAGE_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

sbx_log() { echo "sbx: $*"; }

# Prints the value of the last NAME=VALUE word on the kernel command line; status 1 when absent.
sbx_cmdline_value() {
  _sbx_found=1
  _sbx_value=
  set -f
  for _sbx_word in $(cat "$SBX_CMDLINE_FILE" 2>/dev/null); do
    case "$_sbx_word" in
      "$1="*) _sbx_value="\${_sbx_word#*=}"; _sbx_found=0 ;;
    esac
  done
  set +f
  printf '%s' "$_sbx_value"
  return $_sbx_found
}

# Splits the kernel's ip= value (Documentation/admin-guide/nfs/nfsroot.rst):
# <client-ip>:<server-ip>:<gw-ip>:<netmask>:<hostname>:<device>:<autoconf>:<dns0-ip>:<dns1-ip>:<ntp0-ip>
sbx_parse_ip() {
  SBX_IP_CLIENT= SBX_IP_SERVER= SBX_IP_GATEWAY= SBX_IP_NETMASK= SBX_IP_HOSTNAME=
  SBX_IP_DEVICE= SBX_IP_AUTOCONF= SBX_IP_DNS0= SBX_IP_DNS1=
  case "$1" in
    off|none|on|any|dhcp|bootp|rarp|both) SBX_IP_AUTOCONF="$1"; return 0 ;;
  esac
  _sbx_ifs="$IFS"
  IFS=:
  set -f
  set -- $1
  set +f
  IFS="$_sbx_ifs"
  SBX_IP_CLIENT="\${1:-}" SBX_IP_SERVER="\${2:-}" SBX_IP_GATEWAY="\${3:-}" SBX_IP_NETMASK="\${4:-}"
  SBX_IP_HOSTNAME="\${5:-}" SBX_IP_DEVICE="\${6:-}" SBX_IP_AUTOCONF="\${7:-}" SBX_IP_DNS0="\${8:-}" SBX_IP_DNS1="\${9:-}"
}

# 255.255.255.252 -> 30; status 1 for a malformed or non-contiguous mask.
sbx_mask_to_prefix() {
  _sbx_ifs="$IFS"
  IFS=.
  set -f
  set -- $1
  set +f
  IFS="$_sbx_ifs"
  [ $# -eq 4 ] || return 1
  _sbx_prefix=0
  _sbx_end=0
  for _sbx_octet in "$@"; do
    case "$_sbx_octet" in
      255) _sbx_bits=8 ;; 254) _sbx_bits=7 ;; 252) _sbx_bits=6 ;; 248) _sbx_bits=5 ;;
      240) _sbx_bits=4 ;; 224) _sbx_bits=3 ;; 192) _sbx_bits=2 ;; 128) _sbx_bits=1 ;; 0) _sbx_bits=0 ;;
      *) return 1 ;;
    esac
    if [ $_sbx_end -eq 1 ] && [ $_sbx_bits -ne 0 ]; then return 1; fi
    [ $_sbx_bits -eq 8 ] || _sbx_end=1
    _sbx_prefix=$((_sbx_prefix + _sbx_bits))
  done
  echo $_sbx_prefix
}

sbx_write_resolv_conf() {
  [ -n "$SBX_IP_DNS0$SBX_IP_DNS1" ] || return 0
  _sbx_conf="$SBX_ROOT/etc/resolv.conf"
  _sbx_want=
  [ -z "$SBX_IP_DNS0" ] || _sbx_want="nameserver $SBX_IP_DNS0"
  [ -z "$SBX_IP_DNS1" ] || _sbx_want="$_sbx_want\${_sbx_want:+
}nameserver $SBX_IP_DNS1"
  if [ "$(cat "$_sbx_conf" 2>/dev/null)" = "$_sbx_want" ]; then return 0; fi
  if printf '%s\\n' "$_sbx_want" > "$_sbx_conf.sbx-new" 2>/dev/null && "$SBX_BB" mv -f "$_sbx_conf.sbx-new" "$_sbx_conf" 2>/dev/null; then
    sbx_log "network: wrote /etc/resolv.conf"
  else
    "$SBX_BB" rm -f "$_sbx_conf.sbx-new"
    sbx_log "warning: cannot write /etc/resolv.conf (immutable or read-only); DNS left as the image has it"
  fi
}

# Applies ip= from the kernel command line. When the kernel applied it itself (IP_PNP), the address
# is already on the device and is kept; otherwise address, default route and DNS are set here.
sbx_setup_network() {
  _sbx_ip=$(sbx_cmdline_value ip) || { sbx_log "network: no ip= on the kernel command line, leaving it unconfigured"; return 0; }
  sbx_parse_ip "$_sbx_ip"
  case "$SBX_IP_AUTOCONF" in
    ''|off|none) ;;
    *) sbx_log "network: ip= autoconf '$SBX_IP_AUTOCONF' is left to the kernel"; return 0 ;;
  esac
  if [ -z "$SBX_IP_CLIENT" ]; then sbx_log "network: ip= has no client address"; return 1; fi
  _sbx_dev="\${SBX_IP_DEVICE:-eth0}"
  _sbx_prefix=32
  if [ -n "$SBX_IP_NETMASK" ]; then
    _sbx_prefix=$(sbx_mask_to_prefix "$SBX_IP_NETMASK") || { sbx_log "network: bad netmask $SBX_IP_NETMASK in ip="; return 1; }
  fi
  "$SBX_BB" ip link set lo up
  if "$SBX_BB" ip -4 addr show dev "$_sbx_dev" 2>/dev/null | grep -qF "inet $SBX_IP_CLIENT/"; then
    sbx_log "network: kernel applied ip= (IP_PNP); keeping $SBX_IP_CLIENT on $_sbx_dev"
  else
    "$SBX_BB" ip link set dev "$_sbx_dev" up || return 1
    "$SBX_BB" ip addr add "$SBX_IP_CLIENT/$_sbx_prefix" dev "$_sbx_dev" || return 1
    if [ -n "$SBX_IP_GATEWAY" ]; then
      "$SBX_BB" ip route replace default via "$SBX_IP_GATEWAY" dev "$_sbx_dev" || return 1
    fi
    sbx_log "network: configured $SBX_IP_CLIENT/$_sbx_prefix on $_sbx_dev from userspace (kernel without IP_PNP)"
  fi
  sbx_write_resolv_conf
}

sbx_is_mounted() {
  if [ "$1" = /proc ]; then [ -e "$SBX_ROOT/proc/self/stat" ]; return; fi
  grep -qs " $1 " "$SBX_ROOT/proc/mounts"
}

sbx_mount() { # type dir [options]
  sbx_is_mounted "$2" && return 0
  [ -d "$SBX_ROOT$2" ] || "$SBX_BB" mkdir -p "$SBX_ROOT$2"
  if [ -n "\${3:-}" ]; then "$SBX_BB" mount -t "$1" -o "$3" "$1" "$SBX_ROOT$2"; else "$SBX_BB" mount -t "$1" "$1" "$SBX_ROOT$2"; fi || sbx_log "warning: mounting $1 on $2 failed"
}

sbx_mount_basics() {
  sbx_mount proc /proc
  sbx_mount sysfs /sys
  sbx_mount devtmpfs /dev
  sbx_mount devpts /dev/pts gid=5,mode=620,ptmxmode=666
  sbx_mount tmpfs /dev/shm mode=1777
  sbx_mount tmpfs /run mode=755
}

# Sets the wall clock from sbx.epoch=<seconds> (the host's time at boot); never moves it backwards.
sbx_set_clock() {
  _sbx_epoch=$(sbx_cmdline_value sbx.epoch) || return 0
  case "$_sbx_epoch" in ''|*[!0-9]*) sbx_log "warning: ignoring sbx.epoch=$_sbx_epoch (not whole seconds)"; return 0 ;; esac
  _sbx_now=$("$SBX_BB" date +%s)
  if [ "$_sbx_now" -lt "$_sbx_epoch" ]; then
    "$SBX_BB" date -u -s "@$_sbx_epoch" >/dev/null && sbx_log "clock set to $_sbx_epoch from sbx.epoch"
  fi
}

sbx_set_hostname() {
  _sbx_name=$(sbx_cmdline_value sbx.hostname) || {
    _sbx_ip=$(sbx_cmdline_value ip) && sbx_parse_ip "$_sbx_ip" && _sbx_name="$SBX_IP_HOSTNAME"
  }
  [ -n "$_sbx_name" ] || return 0
  "$SBX_BB" hostname "$_sbx_name" || sbx_log "warning: cannot set hostname $_sbx_name"
}

# Prints the agent's listener flags (warnings go to stderr) from sbx.agent_vsock=<port|off> (default 1024) and
# sbx.agent_tcp=[<addr>:]<port> (off unless given: TCP reaches the agent from the sandbox's network).
sbx_agent_args() {
  _sbx_vsock=$(sbx_cmdline_value sbx.agent_vsock) || _sbx_vsock=1024
  _sbx_tcp=$(sbx_cmdline_value sbx.agent_tcp) || _sbx_tcp=
  _sbx_args=
  case "$_sbx_vsock" in
    ''|off) ;;
    *[!0-9]*) sbx_log "warning: ignoring sbx.agent_vsock=$_sbx_vsock (not a port)" >&2 ;;
    *) _sbx_args="--vsock $_sbx_vsock" ;;
  esac
  case "$_sbx_tcp" in
    ''|off) ;;
    *[!0-9.:]*) sbx_log "warning: ignoring sbx.agent_tcp=$_sbx_tcp (not [addr:]port)" >&2 ;;
    *) _sbx_args="$_sbx_args\${_sbx_args:+ }--tcp $_sbx_tcp" ;;
  esac
  printf '%s' "$_sbx_args"
}

# Starts /.sbx/agent in the background and starts it again whenever it exits (a crash, an OOM kill,
# kill -9 from the workload), SBX_AGENT_RESTART_DELAY seconds later. Waits up to 2 s for its
# listeners, so a snapshot taken after the ready marker has the agent listening.
sbx_start_agent() {
  [ -x "$SBX_ROOT/.sbx/agent" ] || return 0
  _sbx_agent_args=$(sbx_agent_args)
  if [ -z "$_sbx_agent_args" ]; then sbx_log "agent: not started (no listener: sbx.agent_vsock=off and no sbx.agent_tcp)"; return 0; fi
  _sbx_ready="$SBX_ROOT/run/sbx-agent.ready"
  "$SBX_BB" rm -f "$_sbx_ready"
  sbx_log "agent: starting with $_sbx_agent_args"
  (
    while :; do
      # Word splitting of the flags is intended; they hold only digits, dots, colons and dashes.
      "$SBX_ROOT/.sbx/agent" $_sbx_agent_args --ready-file "$_sbx_ready"
      sbx_log "agent exited with status $?; restarting in \${SBX_AGENT_RESTART_DELAY:-1}s"
      "$SBX_BB" sleep "\${SBX_AGENT_RESTART_DELAY:-1}"
    done
  ) </dev/null &
  _sbx_wait=0
  while [ ! -e "$_sbx_ready" ] && [ $_sbx_wait -lt 20 ]; do "$SBX_BB" usleep 100000 2>/dev/null || "$SBX_BB" sleep 1; _sbx_wait=$((_sbx_wait + 1)); done
  [ -e "$_sbx_ready" ] || sbx_log "warning: the agent is not listening after 2 s"
}

# Sets SBX_CHATTR to the image's chattr or busybox's applet; status 1 when neither exists.
sbx_find_chattr() {
  for _sbx_dir in /usr/bin /bin /usr/sbin /sbin; do
    if [ -x "$SBX_ROOT$_sbx_dir/chattr" ]; then SBX_CHATTR="$SBX_ROOT$_sbx_dir/chattr"; return 0; fi
  done
  if "$SBX_BB" --list 2>/dev/null | grep -qx chattr; then SBX_CHATTR="$SBX_BB chattr"; return 0; fi
  return 1
}

# Only a missing chattr is tolerated (one warning line); any chattr failure fails provisioning.
sbx_make_immutable() {
  [ -n "$SBX_IMMUTABLE_FILES" ] || return 0
  if ! sbx_find_chattr; then
    sbx_log "warning: chattr not found (not in the image, not a busybox applet); $SBX_IMMUTABLE_FILES left mutable"
    return 0
  fi
  for _sbx_file in $SBX_IMMUTABLE_FILES; do
    [ -e "$SBX_ROOT$_sbx_file" ] || continue
    if ! _sbx_err=$($SBX_CHATTR +i "$SBX_ROOT$_sbx_file" 2>&1 >/dev/null); then
      sbx_log "provision: chattr +i $_sbx_file failed: $_sbx_err"
      return 1
    fi
  done
}

# Fallback only: when the guest clock is still behind the image build time (no sbx.epoch), APT
# rejects Release files as "not valid yet"; disable its date checks for the provisioning run.
sbx_apt_clock_fallback() {
  SBX_APT_BYPASS=
  [ -d "$SBX_ROOT/etc/apt/apt.conf.d" ] || return 0
  _sbx_now=$("$SBX_BB" date +%s)
  [ "$_sbx_now" -lt "$SBX_BUILD_EPOCH" ] || return 0
  sbx_log "warning: guest clock ($_sbx_now) is behind the image build time ($SBX_BUILD_EPOCH); disabling APT Release date checks while provisioning"
  printf 'Acquire::Check-Valid-Until "false";\\nAcquire::Check-Date "false";\\n' > "$SBX_ROOT/etc/apt/apt.conf.d/99sbx-clock-skew"
  SBX_APT_BYPASS=1
}

sbx_shutdown() {
  "$SBX_BB" sync
  "$SBX_BB" mount -o remount,ro / 2>/dev/null
  "$SBX_BB" reboot -f
}

sbx_provision_main() {
  export PATH="$SBX_IMAGE_PATH:/.sbx/bin"
  # PID 1 starts with HOME=/; tools run by the script (apt, pip, npm) expect root's home.
  if [ -z "\${HOME:-}" ] || [ "$HOME" = / ]; then export HOME=/root; fi
  _sbx_script="$SBX_ROOT/.sbx/provision.sh"
  _sbx_status=0
  if [ -e "$SBX_ROOT/.sbx/provisioned" ]; then
    sbx_log "provision: already ran, not running it again"
  elif [ ! -e "$_sbx_script" ]; then
    sbx_log "provision: no provisioning script"
  else
    sbx_apt_clock_fallback
    _sbx_shell="$SBX_BB sh"
    [ -x "$SBX_ROOT/bin/sh" ] && _sbx_shell="$SBX_ROOT/bin/sh"
    sbx_log "provision: running the provisioning script"
    $_sbx_shell "$_sbx_script"
    _sbx_status=$?
    if [ $_sbx_status -eq 0 ]; then sbx_make_immutable || _sbx_status=1; fi
    [ -z "$SBX_APT_BYPASS" ] || "$SBX_BB" rm -f "$SBX_ROOT/etc/apt/apt.conf.d/99sbx-clock-skew"
    "$SBX_BB" rm -f "$_sbx_script"
    [ $_sbx_status -ne 0 ] || : > "$SBX_ROOT/.sbx/provisioned"
  fi
  "$SBX_BB" sync
  echo "$SBX_PROVISION_EXIT_MARKER status=$_sbx_status"
  sbx_shutdown
}

sbx_init_main() {
  export PATH="$SBX_IMAGE_PATH:/.sbx/bin"
  sbx_mount_basics
  sbx_set_clock
  sbx_set_hostname
  sbx_setup_network || sbx_log "error: network setup from ip= failed"
  if [ "$(sbx_cmdline_value sbx.provision)" = 1 ]; then
    exec "$SBX_BB" sh "$SBX_ROOT/.sbx/provision-runner"
  fi
  sbx_start_agent
  echo "$SBX_READY_MARKER"
}
`;
}

/** /.sbx/init: PID 1. Sets up the guest, starts the agent, prints the ready marker, then execs the workload. */
export function initScript(workload: readonly string[]): string {
  if (workload.length === 0) throw new Error("the workload needs at least a program");
  return `#!/.sbx/bin/busybox sh
# sbx init: mounts, clock, hostname, network, agent, ready marker, then the workload (or provisioning).
. "\${SBX_ROOT:-}/.sbx/lib.sh"
sbx_init_main
exec ${workload.map(shellQuote).join(" ")}
`;
}

export function provisionRunnerScript(): string {
  return `#!/.sbx/bin/busybox sh
# sbx provisioning runner: runs /.sbx/provision.sh once, prints the exit marker, shuts down.
. "\${SBX_ROOT:-}/.sbx/lib.sh"
sbx_provision_main
`;
}

export function setupNetworkScript(): string {
  return `#!/.sbx/bin/busybox sh
# Applies the kernel's ip= from userspace when the kernel lacks IP_PNP (used by setup-network.service).
. "\${SBX_ROOT:-}/.sbx/lib.sh"
sbx_setup_network
`;
}

export function setupNetworkUnit(): string {
  return `[Unit]
Description=sbx: network from the kernel ip= parameter (userspace fallback for kernels without IP_PNP)
DefaultDependencies=no
After=local-fs.target systemd-udevd.service
Before=network-pre.target network.target
Wants=network-pre.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/.sbx/bin/busybox sh /.sbx/setup-network

[Install]
WantedBy=multi-user.target
`;
}

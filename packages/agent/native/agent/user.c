/* Users come from the guest's /etc/passwd and /etc/group read directly: the agent is static, and a
 * static glibc cannot load NSS modules (getpwnam would silently miss LDAP/sssd users). fgetpwent and
 * fgetgrent parse one file without NSS. */
#include "agent.h"
#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <string.h>
#include <sys/fsuid.h>
#include <unistd.h>

static void fill_groups(struct user *u) {
  u->ngroups = 0;
  u->groups[u->ngroups++] = u->gid;
  FILE *f = fopen("/etc/group", "re");
  if (!f) return;
  struct group *g;
  while ((g = fgetgrent(f)) != NULL && u->ngroups < (int)(sizeof u->groups / sizeof u->groups[0])) {
    if (g->gr_gid == u->gid) continue;
    for (char **m = g->gr_mem; m && *m; m++) {
      if (strcmp(*m, u->name) == 0) {
        u->groups[u->ngroups++] = g->gr_gid;
        break;
      }
    }
  }
  fclose(f);
}

static void copy(char *dst, size_t cap, const char *src) {
  snprintf(dst, cap, "%s", src ? src : "");
}

/* node: absent (-1) means root; a string is a user name; a number is a uid (which need not exist). */
int user_resolve(const struct json_doc *doc, int node, struct user *out) {
  memset(out, 0, sizeof *out);
  int64_t uid = -1;
  const char *name = NULL;
  if (node < 0 || doc->nodes[node].type == J_NULL) uid = 0;
  else if (doc->nodes[node].type == J_NUM) {
    if (json_int(doc, node, 0, 0x7fffffff, &uid)) return -EINVAL;
  } else {
    name = json_str(doc, node);
    if (!name || !*name || strlen(name) >= sizeof out->name) return -EINVAL;
  }
  FILE *f = fopen("/etc/passwd", "re");
  if (f) {
    struct passwd *p;
    while ((p = fgetpwent(f)) != NULL) {
      if ((name && strcmp(p->pw_name, name) == 0) || (!name && (int64_t)p->pw_uid == uid)) {
        out->uid = p->pw_uid;
        out->gid = p->pw_gid;
        copy(out->name, sizeof out->name, p->pw_name);
        copy(out->home, sizeof out->home, p->pw_dir);
        copy(out->shell, sizeof out->shell, p->pw_shell);
        fclose(f);
        fill_groups(out);
        return 0;
      }
    }
    fclose(f);
  }
  if (name) return -ENOENT;
  out->uid = (uid_t)uid;
  out->gid = (gid_t)uid;
  snprintf(out->name, sizeof out->name, "%lld", (long long)uid);
  copy(out->home, sizeof out->home, uid == 0 ? "/root" : "/");
  copy(out->shell, sizeof out->shell, "/bin/sh");
  out->groups[0] = out->gid;
  out->ngroups = 1;
  return 0;
}

/* The agent is single-threaded, so switching its filesystem identity around one operation is safe: the
 * kernel then checks every path component with the caller's uid, gid and groups (and drops
 * CAP_DAC_OVERRIDE and friends while fsuid is not 0), and new files are owned by the caller. */
int fs_as_user(const struct user *u) {
  if (setgroups((size_t)u->ngroups, u->groups)) return -errno;
  setfsgid(u->gid);
  setfsuid(u->uid);
  if ((uid_t)setfsuid((uid_t)-1) != u->uid || (gid_t)setfsgid((gid_t)-1) != u->gid) {
    fs_as_agent();
    return -EPERM;
  }
  return 0;
}

void fs_as_agent(void) {
  setfsuid(geteuid());
  setfsgid(getegid());
  if (geteuid() == 0) setgroups(0, NULL);
}

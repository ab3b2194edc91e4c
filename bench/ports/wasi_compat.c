/* POSIX functions that wasi-libc declares but WASI preview 1 cannot
 * provide, as honest failures, so that real programs link: there is no user
 * database (the SQLite shell then falls back to $HOME), no shell to run
 * commands in and no temporary directory of its own (Lua's os.execute and
 * io.tmpfile report the failure). Linked into the ported programs only. */
#include <errno.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>

struct passwd *getpwuid(uid_t uid) {
    (void)uid;
    errno = ENOENT;
    return 0;
}

int system(const char *command) {
    if (command == NULL) return 0; /* no command processor */
    errno = ENOSYS;
    return -1;
}

FILE *tmpfile(void) {
    errno = ENOTSUP;
    return NULL;
}

/* SQLite's OS layer for WASI, for the ports benchmark.
 *
 * SQLite 3.40's os_unix.c needs mmap, fcntl locks and fchown, which WASI
 * preview 1 lacks, so SQLite is built with SQLITE_OS_OTHER and this file
 * supplies sqlite3_os_init(): SQLite's own demonstration VFS
 * (src/test_demovfs.c: open/read/write/fsync, no locking, which is fine for
 * one process) with its stub xDlOpen family replaced by the real dlopen from
 * wasmrun's libc.so, so that the shell's `.load` works. */
#include <dlfcn.h>
#include <string.h>

#include "sqlite3.h"

sqlite3_vfs *sqlite3_demovfs(void);

static sqlite3_vfs wasi_vfs;

static void *wasi_dlopen(sqlite3_vfs *vfs, const char *path) {
    (void)vfs;
    return dlopen(path, RTLD_NOW | RTLD_GLOBAL);
}

static void wasi_dlerror(sqlite3_vfs *vfs, int n, char *out) {
    const char *msg = dlerror();
    (void)vfs;
    sqlite3_snprintf(n, out, "%s", msg ? msg : "unknown dlopen error");
}

static void (*wasi_dlsym(sqlite3_vfs *vfs, void *handle, const char *name))(void) {
    (void)vfs;
    return (void (*)(void))dlsym(handle, name);
}

static void wasi_dlclose(sqlite3_vfs *vfs, void *handle) {
    (void)vfs;
    dlclose(handle);
}

int sqlite3_os_init(void) {
    memcpy(&wasi_vfs, sqlite3_demovfs(), sizeof wasi_vfs);
    wasi_vfs.zName = "wasi";
    wasi_vfs.xDlOpen = wasi_dlopen;
    wasi_vfs.xDlError = wasi_dlerror;
    wasi_vfs.xDlSym = wasi_dlsym;
    wasi_vfs.xDlClose = wasi_dlclose;
    return sqlite3_vfs_register(&wasi_vfs, 1);
}

int sqlite3_os_end(void) { return SQLITE_OK; }

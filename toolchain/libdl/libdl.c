/* libdl.so for wasmrun: <dlfcn.h> over the host module "dyld".
 *
 * dlopen/dlsym use toywasm's ABI (load_object, resolve_symbol) where it
 * exists, plus wasmrun's additions (resolve_any, close_object, error,
 * describe), so that flags, dlclose, dlerror and dladdr work for real.
 * It needs nothing from libc: it has no NEEDED entry and can be loaded
 * before or without libc.so. Single-threaded, like the rest of wasm32-wasi
 * preview 1. */

#include <stddef.h>
#include <stdint.h>

#include "wasmrun_dlfcn.h"

#define DYLD(name) __attribute__((import_module("dyld"), import_name(name)))

DYLD("load_object") int dyld_load_object(const char *name, size_t len, int flags, void **out);
DYLD("resolve_any") int dyld_resolve_any(void *handle, const char *name, size_t len, void **out);
DYLD("close_object") int dyld_close_object(void *handle);
DYLD("error") int dyld_error(char *buf, size_t cap);
DYLD("describe")
int dyld_describe(const void *addr, char *fname, size_t fcap, char *sname, size_t scap,
                  uint32_t out[3]);

/* dlopen(NULL) stands for the program and its global scope. */
#define PROGRAM_HANDLE ((void *)(uintptr_t)0xfffffff0u)

static char error_text[1024];
static int error_pending;

static size_t length(const char *s) {
    size_t n = 0;
    while (s[n]) n++;
    return n;
}

static void set_error_text(const char *text) {
    size_t i = 0;
    for (; text[i] && i < sizeof error_text - 1; i++) error_text[i] = text[i];
    error_text[i] = 0;
    error_pending = 1;
}

/* Take the host's message for the failure that just happened. */
static void fetch_error(void) {
    if (dyld_error(error_text, sizeof error_text) > 0)
        error_pending = 1;
    else
        set_error_text("dynamic linker error");
}

void *dlopen(const char *name, int flags) {
    void *handle;
    if (name == NULL) return PROGRAM_HANDLE;
    if (dyld_load_object(name, length(name), flags, &handle) != 0) {
        fetch_error();
        return NULL;
    }
    return handle;
}

void *dlsym(void *restrict handle, const char *restrict name) {
    void *addr;
    if (handle == RTLD_NEXT) {
        set_error_text("dlsym: RTLD_NEXT is not supported");
        return NULL;
    }
    if (handle == PROGRAM_HANDLE) handle = RTLD_DEFAULT;
    if (dyld_resolve_any(handle, name, length(name), &addr) != 0) {
        fetch_error();
        return NULL;
    }
    return addr;
}

int dlclose(void *handle) {
    if (handle == PROGRAM_HANDLE) return 0;
    if (dyld_close_object(handle) != 0) {
        fetch_error();
        return -1;
    }
    return 0;
}

char *dlerror(void) {
    if (!error_pending) return NULL;
    error_pending = 0;
    return error_text;
}

int dladdr(const void *addr, Dl_info *info) {
    static char fname[1024];
    static char sname[256];
    uint32_t out[3];
    if (dyld_describe(addr, fname, sizeof fname, sname, sizeof sname, out) != 0) {
        fetch_error();
        return 0;
    }
    info->dli_fname = fname;
    info->dli_fbase = (void *)(uintptr_t)out[0];
    info->dli_sname = out[2] ? sname : NULL;
    info->dli_saddr = out[2] ? (void *)(uintptr_t)out[1] : NULL;
    return 1;
}

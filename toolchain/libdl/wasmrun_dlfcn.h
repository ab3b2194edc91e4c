/* What wasmrun's libdl.so adds to <dlfcn.h>: wasi-libc hides Dl_info and
 * dladdr() behind __wasilibc_unmodified_upstream, so they are declared here.
 * The RTLD_* values are wasi-libc's: LAZY 1, NOW 2, NOLOAD 4, LOCAL 8,
 * GLOBAL 0x100, NODELETE 0x1000. */
#ifndef WASMRUN_DLFCN_H
#define WASMRUN_DLFCN_H

#include <dlfcn.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    const char *dli_fname; /* path of the library holding the address */
    void *dli_fbase;       /* its __memory_base */
    const char *dli_sname; /* nearest exported symbol, or NULL */
    void *dli_saddr;       /* that symbol's address (or table index) */
} Dl_info;

/* Returns nonzero and fills *info when addr lies in a loaded object. The
 * strings live in static buffers overwritten by the next call. */
int dladdr(const void *addr, Dl_info *info);

#ifdef __cplusplus
}
#endif

#endif

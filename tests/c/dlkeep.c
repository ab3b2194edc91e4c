/* A library whose function dlopens libplugin.so and never closes it: its
   destructor is exit's to run (wasmrun call: after the call). */
#include <dlfcn.h>
int keep_plugin(void) { return dlopen("libplugin.so", RTLD_NOW) != 0; }

/* A plugin loaded with dlopen: functions, data, a constructor, a destructor. */
#include <stdio.h>
int plugin_value = 42;
static int calls;
int plugin_add(int a, int b) { calls++; return a + b; }
int plugin_calls(void) { return calls; }
__attribute__((constructor)) static void plugin_init(void) { printf("plugin ctor\n"); }
__attribute__((destructor)) static void plugin_fini(void) { printf("plugin dtor\n"); fflush(stdout); }

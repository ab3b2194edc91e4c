/* Needs plugin_add from the global scope (so from an RTLD_GLOBAL plugin). */
extern int plugin_add(int, int);
int use_plugin(void) { return plugin_add(100, 1); }

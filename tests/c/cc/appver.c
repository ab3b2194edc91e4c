/* A library (or plugin) reading data that its program defines. */
extern int app_version;
extern const char app_name[];

int plugin_version(void) { return app_version; }
const char *plugin_app_name(void) { return app_name; }

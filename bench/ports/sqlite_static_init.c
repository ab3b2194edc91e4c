/* For the statically linked SQLite shell only: there is no dlopen, so the
 * rot13 extension is compiled in and registered for every connection
 * (SQLITE_EXTRA_INIT runs at the end of sqlite3_initialize). */
#include "sqlite3.h"

int sqlite3_rot_init(sqlite3 *db, char **err, const sqlite3_api_routines *api);

int port_static_init(const char *unused) {
    (void)unused;
    return sqlite3_auto_extension((void (*)(void))sqlite3_rot_init);
}

/* Needs liblddb.so but has no RUNTIME_PATH of its own: it finds the copy its
   program loaded through the program's RUNTIME_PATH, as ld.so reuses an
   already-loaded library of the same name. */
extern int lddb_value(void);
int ldda_value(void) { return lddb_value() + 1; }

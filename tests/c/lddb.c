int lddb_value(void) { return 41; }

/* Version 2 of libvanish: the symbols below are gone or changed type. */
long long sigfn(int x, int y) { return x + y; }
int still_here(void) { return 33; }

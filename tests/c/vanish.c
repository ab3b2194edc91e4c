/* Version 1 of libvanish: has everything its users need. */
int vanished_data = 11;
int vanished_fn(void) { return 22; }
int sigfn(int x) { return x + 1; }
int still_here(void) { return 33; }

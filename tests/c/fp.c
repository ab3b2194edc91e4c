/* Function pointers that must compare equal across modules. */
int fp_target(int x) { return x * 3; }
void *fp_get(void) { return (void *)fp_target; }
int fp_is_target(void *p) { return p == (void *)fp_target; }
int fp_call(int (*f)(int), int x) { return f(x); }
static int (*stored)(int);
void fp_store(int (*f)(int)) { stored = f; }
void *fp_stored(void) { return (void *)stored; }

const char *which(void) { return "prec2"; }
int prec_value = 2;
int hook(void) { return 2; }
/* hook() is imported: the global scope decides which definition it gets. */
extern int hook_user_target(void);
int call_hook(void) { return hook_user_target(); }

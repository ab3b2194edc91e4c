extern int hook(void);
int hook_user_target(void) { return hook(); }

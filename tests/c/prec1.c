const char *which(void) { return "prec1"; }
int prec_value = 1;
int hook(void) { return 1; }

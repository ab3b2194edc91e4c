/* Symbol precedence: main first, then load order (prec1 before prec2). */
#include <stdio.h>
extern const char *which(void);
extern int prec_value;
extern int call_hook(void);
int hook(void) { return 100; }  /* main's definition wins over both libraries */
int main(void) {
    printf("which=%s\n", which());
    printf("prec_value=%d\n", prec_value);
    printf("hook=%d\n", call_hook());
    return 0;
}

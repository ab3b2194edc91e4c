/* Needs libldda.so and liblddb.so, both in lddlib/, found through RUNTIME_PATH $ORIGIN/lddlib. */
#include <stdio.h>
extern int ldda_value(void);
int main(void) { printf("ldda_value=%d\n", ldda_value()); return 0; }

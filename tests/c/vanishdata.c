#include <stdio.h>
extern int vanished_data;
extern int still_here(void);
int main(void) { printf("%d %d\n", vanished_data, still_here()); return 0; }

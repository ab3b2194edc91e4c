#include <stdio.h>
extern int sigfn(int);
int main(void) { printf("%d\n", sigfn(1)); return 0; }

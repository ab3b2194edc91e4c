#include <stdio.h>
extern int cyca(int);
int main(void) { printf("cycle=%d\n", cyca(5)); return 0; }

/* A non-PIE main: it defines memory and table; libraries are placed after it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
extern int shared_value;
extern int data_sum(void);
extern void data_bump(void);
int main_value = 5;
static int cmp(const void *a, const void *b) { return *(const int *)a - *(const int *)b; }
int main(int argc, char **argv) {
    char *p = malloc(100000);
    memset(p, 'x', 100000);
    int v[] = {3, 1, 2};
    qsort(v, 3, sizeof v[0], cmp);
    data_bump();
    printf("nopie shared_value=%d main_value=%d sum=%d sorted=%d%d%d argc=%d\n",
           shared_value, main_value, data_sum(), v[0], v[1], v[2], argc);
    free(p);
    return 3;
}

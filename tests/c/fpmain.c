#include <stdio.h>
#include <stdlib.h>
extern int fp_target(int);
extern void *fp_get(void);
extern int fp_is_target(void *);
extern int fp_call(int (*)(int), int);
extern void fp_store(int (*)(int));
extern void *fp_stored(void);
static int main_cb(int x) { return x + 1000; }
static int cmp(const void *a, const void *b) { return *(const int *)a - *(const int *)b; }
int main(void) {
    printf("lib_fn_same=%d\n", (void *)fp_target == fp_get());
    printf("lib_sees_same=%d\n", fp_is_target((void *)fp_target));
    fp_store(main_cb);
    printf("main_fn_same=%d\n", fp_stored() == (void *)main_cb);
    printf("callback=%d\n", fp_call(main_cb, 5));
    printf("libfn_via_ptr=%d\n", fp_call(fp_target, 7));
    printf("null_is_null=%d\n", fp_is_target(0) == 0);
    int v[] = {5, 3, 9, 1, 7};
    qsort(v, 5, sizeof v[0], cmp);
    printf("sorted=%d,%d,%d,%d,%d\n", v[0], v[1], v[2], v[3], v[4]);
    return 0;
}

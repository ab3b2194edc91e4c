/* main -> left, right -> base (diamond); also a transitive call chain. */
#include <stdio.h>
extern int left(void);
extern int right(void);
extern int base_counter;
__attribute__((constructor)) static void main_ctor(void) { printf("ctor main\n"); }
int main(void) {
    int l = left();
    int r = right();
    printf("left=%d right=%d base_counter=%d\n", l, r, base_counter);
    return 0;
}

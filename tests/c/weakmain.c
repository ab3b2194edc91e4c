/* Weak undefined symbols resolve to 0; weak ones that exist resolve normally. */
#include <stdio.h>
__attribute__((weak)) extern int missing_fn(void);
__attribute__((weak)) extern int missing_data;
__attribute__((weak)) extern int shared_value;
__attribute__((weak)) extern int data_sum(void);
int main_value = 0;  /* libdata.so needs it */
int main(void) {
    printf("missing_fn=%d\n", missing_fn == 0);
    printf("missing_data=%d\n", &missing_data == 0);
    printf("present_data=%d\n", &shared_value != 0 ? shared_value : -1);
    printf("present_fn=%d\n", data_sum != 0 ? data_sum() : -1);
    return 0;
}

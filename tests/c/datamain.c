#include <stdio.h>
extern int shared_value;
extern const char *greeting;
extern int numbers[4];
extern int *numbers_ptr;
extern int *main_value_ptr;
extern int data_sum(void);
extern int data_read_main(void);
extern void data_bump(void);
int main_value = 7;
int main(void) {
    printf("shared_value=%d\n", shared_value);
    printf("greeting=%s\n", greeting);
    printf("numbers_ptr_ok=%d\n", numbers_ptr == &numbers[2] && *numbers_ptr == 3);
    printf("main_value_ptr_ok=%d\n", main_value_ptr == &main_value);
    shared_value = 100;
    printf("data_sum=%d\n", data_sum());
    printf("lib_reads_main=%d\n", data_read_main());
    data_bump();
    printf("after_bump=%d,%d\n", shared_value, main_value);
    return 0;
}

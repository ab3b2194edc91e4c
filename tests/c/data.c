/* Data symbols read and written across modules, with data relocations. */
int shared_value = 42;
const char *greeting = "hello from libdata";
int numbers[4] = {1, 2, 3, 4};
int *numbers_ptr = &numbers[2];          /* internal data relocation */
extern int main_value;                    /* defined by the main module */
int *main_value_ptr = &main_value;        /* cross-module data relocation */
int data_sum(void) { return shared_value + numbers[0] + numbers[3]; }
int data_read_main(void) { return main_value; }
void data_bump(void) { shared_value += 1; main_value += 1; }

/* A library that reads the program's layout symbols through GOT.mem and owns
   a block of data with a known pattern (checked after heavy malloc use). */
extern char __heap_base, __heap_end;
char *view_heap_base(void) { return &__heap_base; }
char *view_heap_end(void) { return &__heap_end; }
static unsigned char block[200000];
__attribute__((constructor)) static void view_fill(void) {
    for (unsigned i = 0; i < sizeof block; i++) block[i] = (unsigned char)(i * 7 + 3);
}
int view_intact(void) {
    for (unsigned i = 0; i < sizeof block; i++)
        if (block[i] != (unsigned char)(i * 7 + 3)) return 0;
    return 1;
}

/* A library with 4 MiB of initialised data (think of a language runtime's
   tables): what a run maps from the memory image instead of copying. */
char big_table[4 << 20] = {1, 2, 3};
int big_at(int i) { return big_table[i]; }

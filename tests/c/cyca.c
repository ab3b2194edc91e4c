/* libcyca and libcycb need each other (a NEEDED cycle). */
extern int cycb(int);
int cyca(int n) { return n <= 0 ? 0 : 1 + cycb(n - 1); }

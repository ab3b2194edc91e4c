extern int cyca(int);
int cycb(int n) { return n <= 0 ? 0 : 10 + cyca(n - 1); }

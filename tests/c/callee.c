/* A one-line library function for the cross-library call benchmark. */
int add_one(int x) { return x + 1; }

extern int add_one(int);
int rp_twice(int x) { return add_one(add_one(x)); }

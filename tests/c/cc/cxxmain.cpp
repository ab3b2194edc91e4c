#include <cstdio>
#include <stdexcept>
#include <string>
#include <typeinfo>
#include "apperror.h"

int main() {
    try {
        thrower_throw(3);
    } catch (const AppError &e) {
        std::printf("program caught AppError(%d): %s\n", e.code, e.what());
    }
    std::printf("library caught AppError(%d)\n", catcher_catch(9));
    try {
        thrower_throw(-1);
    } catch (const std::logic_error &e) {
        std::printf("program caught std::logic_error: %s\n", e.what());
    }
    try {
        (void)std::stoi("x");
    } catch (const std::invalid_argument &e) {
        std::printf("stoi threw std::invalid_argument\n");
    }
    std::printf("typeinfo shared: %s\n", thrower_typeinfo() == &typeid(AppError) ? "yes" : "no");
    return 0;
}

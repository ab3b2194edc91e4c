/* A class with no key function: every module that uses it has its own weak
 * copy of its typeinfo, so catching it by type across modules only works
 * when they all bind to one copy (the program's). */
#pragma once
#include <stdexcept>
#include <string>

struct AppError : std::runtime_error {
    int code;
    AppError(const std::string &what, int c) : std::runtime_error(what), code(c) {}
};

extern "C" {
void thrower_throw(int code);
const std::type_info *thrower_typeinfo();
int catcher_catch(int code);
}

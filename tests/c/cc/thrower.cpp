#include <typeinfo>
#include "apperror.h"

extern "C" void thrower_throw(int code) {
    if (code < 0) throw std::out_of_range("negative code");
    throw AppError("thrown in libthrower", code);
}

extern "C" const std::type_info *thrower_typeinfo() { return &typeid(AppError); }

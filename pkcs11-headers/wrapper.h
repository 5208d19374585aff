/* Input of build.rs: the interface p11derive exports and its vendor extensions. */
#include "pkcs11.h"
#include "p11derive.h"

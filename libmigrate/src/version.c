/* Version of the loaded library. */
#include "internal.h"

#define MIG_STR2(x) #x
#define MIG_STR(x) MIG_STR2(x)

MIG_API unsigned int mig_version(void)
{
	return MIG_VERSION_HEX;
}

MIG_API const char *mig_version_string(void)
{
	return MIG_STR(MIG_VERSION_MAJOR) "." MIG_STR(MIG_VERSION_MINOR) "."
		MIG_STR(MIG_VERSION_PATCH);
}

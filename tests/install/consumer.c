/* A program outside the tree, built against the installed libmigrate. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <migrate/migrate.h>

int main(void)
{
	mig_params p;
	mig_error err = { 0 };

	mig_params_init(&p);
	if (mig_params_validate(&p, &err) != 0) {
		fprintf(stderr, "defaults invalid: %s\n", err.msg);
		return 1;
	}
	if (mig_params_set(&p, "downtime-ms", "0", &err) != -EINVAL ||
	    !strstr(err.msg, "downtime_ms")) {
		fprintf(stderr, "bad value accepted or unnamed: %s\n", err.msg);
		return 1;
	}
	if (strcmp(mig_strerror(-ECONNRESET), "connection reset by peer")) {
		fprintf(stderr, "mig_strerror wrong\n");
		return 1;
	}
	printf("version %s\n", mig_version_string());
	return 0;
}

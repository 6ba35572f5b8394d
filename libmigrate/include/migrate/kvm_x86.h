/*
 * Save and load the standard KVM x86 state, so that an embedding VMM does
 * not write it again. Included by <migrate/migrate.h>.
 */
#ifndef MIGRATE_KVM_X86_H
#define MIGRATE_KVM_X86_H

#ifdef __cplusplus
extern "C" {
#endif

#ifdef __cplusplus
}
#endif

#endif /* MIGRATE_KVM_X86_H */

/* Preloaded (LD_PRELOAD) into the processes of the LeakSanitizer test run only
 * (launch/sanitize.sh asan). dlclose() does nothing, so every shared module a process loads
 * stays mapped until it exits.
 *
 * Open MPI loads its components (mca_*.so, PMIx's) with dlopen and unloads them in
 * MPI_Finalize. Memory those components allocate during MPI_Init and keep for the process's
 * lifetime is reported by LeakSanitizer at exit, and once the module is unloaded its frames
 * print as "<unknown module>": no suppression can name them. Kept mapped, they are named (the
 * component's file), and launch/sanitizers/lsan.supp suppresses them by library. The sanitizer
 * runtime's own dlclose interceptor calls this one as the next definition. */
int dlclose(void* handle) {
  (void)handle;
  return 0;
}

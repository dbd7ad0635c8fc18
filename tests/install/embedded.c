/* An application in C that embeds the engine, built against an installed
 * libbaton with pkg-config (baton.pc): libbaton is a static library of C++,
 * and its .pc brings the C++ runtime (a session 37 trial's C program did not
 * link without -lstdc++). Its calls answer as documented without starting
 * anything. */
#include <baton/baton.h>
#include <stdio.h>

int main(void) {
  baton_config_t config;
  baton_config_init(&config);
  config.copy_on_write = 9; /* none of 0, BATON_COW, BATON_COW_PROTECT_AHEAD, BATON_COW_QUIESCENT */
  baton_t* b = NULL;
  const int rc = baton_start(&config, NULL, 0, &b);
  if (rc != BATON_EINVAL || b != NULL) {
    fprintf(stderr, "embedded: baton_start with copy_on_write 9 gave %d (%s), expected BATON_EINVAL\n", rc,
            baton_strerror(rc));
    return 1;
  }
  printf("embedded: linked against libbaton from C; %s\n", baton_last_error());
  return 0;
}

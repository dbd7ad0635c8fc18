/* An application in C built against an installed libbaton-client with
 * pkg-config (baton-client.pc), as the user guide says to: it links without
 * DPDK, and its calls answer as documented with no batond to talk to. */
#include <baton/baton.h>
#include <stdio.h>
#include <string.h>

int main(void) {
  baton_t* b = NULL;
  const int rc = baton_connect("/nonexistent/batond.sock", &b);
  if (rc != BATON_EUNAVAIL || b != NULL) {
    fprintf(stderr, "client: baton_connect to no batond gave %d (%s), expected BATON_EUNAVAIL\n", rc,
            baton_strerror(rc));
    return 1;
  }
  if (strstr(baton_last_error(), "/nonexistent/batond.sock") == NULL) {
    fprintf(stderr, "client: the error does not name the socket: %s\n", baton_last_error());
    return 1;
  }
  printf("client: linked against libbaton-client; %s\n", baton_last_error());
  return 0;
}

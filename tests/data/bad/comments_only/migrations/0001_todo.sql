-- TODO: write this migration
/* nothing
   here */


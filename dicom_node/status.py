"""Every DIMSE status the node sends, or that pynetdicom sends on the node's behalf.

Names follow the standard's wording (PS3.7 Annex C, PS3.4 B.2.3 and C.4). One code can mean
different things in different services (0xA900, 0xC000): each meaning has its own name.
Whether a status is a success, warning, failure, cancel or pending one is decided by
``pynetdicom.status.code_to_category``, not by sets kept here; that is also how the node
interprets the statuses its peers send.
"""

from __future__ import annotations

# -- Any service (PS3.7 C.1-C.5) ---------------------------------------------------------
SUCCESS = 0x0000
CANCEL = 0xFE00  # the operation was cancelled at the requestor's C-CANCEL
PROCESSING_FAILURE = 0x0110  # the node failed in a way no more specific status describes
SOP_CLASS_NOT_SUPPORTED = 0x0122  # the sender's code for an instance whose SOP class the peer did not accept

# -- C-STORE (PS3.4 B.2.3) ---------------------------------------------------------------
OUT_OF_RESOURCES = 0xA700  # Refused: no room (or no way) to store the instance durably
DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900  # Error: the data set's SOP Class UID is not the request's
CANNOT_UNDERSTAND = 0xC000  # Error: Cannot understand (0xCxxx); the sender's code for a send that failed locally
# The node's own "Cannot understand" codes (the standard leaves 0xCxxx to the implementation):
CANNOT_UNDERSTAND_MALFORMED = 0xC210  # not a structurally complete data set (lengths, delimiters, deflate)
CANNOT_UNDERSTAND_MISSING_UID = 0xC220  # a required identifying UID is missing or empty
CANNOT_UNDERSTAND_INVALID_UID = 0xC221  # an identifying UID is not a valid UID (PS3.5 9.1)
CANNOT_UNDERSTAND_UID_MISMATCH = 0xC222  # the data set's SOP Instance UID is not the request's

# -- C-FIND / C-MOVE / C-GET (PS3.4 C.4.1.1.4, C.4.2.1.5, C.4.3.1.4) -------------------------
PENDING = 0xFF00  # a match (C-FIND) or a sub-operation (C-MOVE/C-GET) follows
IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900  # Failed: the identifier is not valid for the information model
UNABLE_TO_PROCESS = 0xC000  # Failed: Unable to process (0xCxxx)
# Sent by pynetdicom for the node's C-MOVE/C-GET handlers:
MOVE_DESTINATION_UNKNOWN = 0xA801  # Refused: handle_move yields no address for the Move Destination
OUT_OF_RESOURCES_UNABLE_TO_PERFORM_SUBOPERATIONS = 0xA702  # Refused: every sub-operation failed
SUBOPERATIONS_COMPLETE_ONE_OR_MORE_FAILURES = 0xB000  # Warning: some sub-operations failed or had warnings
GET_UNABLE_TO_PROCESS = 0xC413  # Unable to process: the C-GET handler failed before yielding its count
MOVE_UNABLE_TO_PROCESS = 0xC513  # Unable to process: the C-MOVE handler failed before yielding its count

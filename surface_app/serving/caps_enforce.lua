-- The caps enforced and recorded (after caps_enforce_body.lua): the ids of the items refused.
return refused

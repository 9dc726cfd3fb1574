-- Filter active calendars by business
    ON business_calendars(business_id, is_active);
